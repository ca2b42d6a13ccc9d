"""The package's version, in a module of its own: modules inside the package read it from here,
not from the package itself, whose ``PHAModel`` attribute imports the model."""

__version__ = "0.2.0"

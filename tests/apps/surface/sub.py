"""A submodule whose function the package re-exports."""


def helper(x):
    return x

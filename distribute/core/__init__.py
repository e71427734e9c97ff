"""The pure core: ledgers, lock and lease decisions, names, errors.

Nothing in this package touches git, files, clocks or randomness: time and
observations come in as arguments and decisions go out as values.
"""

"""Target profiles (one TOML file per deployment target), installed as ``edgekit.profiles``.

This folder is a package only so that an installed edgekit carries the profiles; the files are
read by :mod:`edgekit.targets`.
"""

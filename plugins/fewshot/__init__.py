"""Helpers the few-shot image suites share: the class pool, the native and learn2learn samplers over it,
the suite base with its validated episode config, and Omniglot's archive reader. Plain modules that
define no hooks: the suites import them, never the reverse, and no suite imports another."""

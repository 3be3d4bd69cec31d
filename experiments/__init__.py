"""Users of the library, kept apart from it: the command line, the demo, the comparison with the baselines and
the training of the embedded defaults. The library (``toolkit``) imports nothing from here."""

"""One-off studies: users of the library that produced figures on the results page or in the research log.

Not installed; each names the section it produces in its header. Run from the root of a clone.
"""

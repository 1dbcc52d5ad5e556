"""The built-in sample data set: the bundled photographs (photos), the manipulations that make fakes
of them (manipulations) and the generator of the labelled folders (generate).

May import the base modules only.
"""

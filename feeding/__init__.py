"""feeding: interchangeable image-batch pipelines behind one interface.

Importing this package never imports DALI (or Ray): backends load in the branch
that needs them.
"""

"""The training methods' names, in a module that imports nothing heavy.

``arf --help`` lists them and must not load torch (``arf.train`` imports it); :mod:`arf.train.config` validates
against these and :data:`arf.train.methods.METHODS` registers one implementation per name (a test checks the two
agree).
"""

METHOD_NAMES = ("zeroshot", "lp", "ft", "lpft", "flyp", "arf", "arf-ft", "arf-lpft")
# Methods that take anchor losses, and what each is with both weights 0.
ANCHOR_METHODS = {"arf": "flyp", "arf-ft": "ft", "arf-lpft": "lpft"}

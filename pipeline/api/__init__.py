"""The protocol's contract, shared by the client and the engine.

``errors`` (the exception tree and the one table code -> class), ``records`` (the
typed result of every interface) and ``validate`` (the reference's limits as pure
checks). Nothing here does I/O.
"""

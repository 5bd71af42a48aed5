"""The protocol-neutral turn core: the neutral request and message types (`messages`) and the driver (`core`) that
admits a turn, runs it on a pool worker and yields neutral events; the wire protocols (`maxproxy.wire`) sit above it.
"""

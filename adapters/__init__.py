"""Model backends behind one small contract (``adapters.base``)."""

"""The method's pieces: routing space (topology), layer specs, operations, gate, cell."""

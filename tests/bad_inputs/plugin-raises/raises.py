raise RuntimeError("boom in a plugin")

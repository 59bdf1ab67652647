"""The Wireshark Lua plugin (generated) and its generator."""

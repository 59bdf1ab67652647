"""The Textual application: reads the engine's events and state.

The engine never imports this package (DESIGN.md).
"""

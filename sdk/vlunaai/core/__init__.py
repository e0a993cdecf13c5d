"""Import paths of the published client (`vlunaai.core...`), kept so existing imports work.

New code should import from `vlunaai` directly.
"""

"""The embedded demo: synthetic brain-like data and the whole pre-train → fine-tune story on it."""

"""The compression report's figures (plots) and documents (render)."""

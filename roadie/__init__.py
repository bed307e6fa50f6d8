"""Roadie: infrastructure automation for the stream platform."""

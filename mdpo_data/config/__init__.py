"""Options and settings: field metadata, the strict YAML loader, build settings, runtime."""

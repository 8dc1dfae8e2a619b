"""Reading a built folder back: data card, preview, validate, Hub export, image reliance."""

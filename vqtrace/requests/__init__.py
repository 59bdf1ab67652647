"""Device requests: a chain (readable and written bytes) mapped to a typed request with field trees."""

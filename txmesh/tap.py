"""twistd glue: placeholder replaced below."""

"""Example application package (the `app` of `-A app.workers`)."""

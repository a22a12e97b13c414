"""The HTTP door: the FastAPI app, its routes, middleware, schemas and the web page."""

"""The service's routes, one router per family; :func:`service.app.create_app` includes them."""

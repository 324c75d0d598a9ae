"""The built-in strategy families of mtl-search, each a plugin registered through the ``mtl_search`` entry-point group."""

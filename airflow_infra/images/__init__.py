"""Container images from declared environments: recipe, registry, builders."""

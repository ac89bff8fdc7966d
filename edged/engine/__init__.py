"""Model engines behind one typed boundary (:mod:`edged.engine.types`): scheduling, decoding, grammars, caches.

Only this package and :mod:`edged.models` import mlx."""

"""``edged bench``: latency, throughput and memory of a running edged, beside raw mlx-lm (and llama.cpp).

``run`` orchestrates; ``daemon`` starts ``edged run`` as its own process; ``driver`` sends the
workload over MQTT; ``baseline`` and ``llamacpp`` run the same prompts without edged, each in a
child process; ``report`` turns the samples into figures, ratios, a table and JSON.
"""

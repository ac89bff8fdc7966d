"""Operations: health and status, stats and metrics, sd_notify, Home Assistant discovery, logs, service files."""

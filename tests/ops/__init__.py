"""Operations: systemd unit, container files, sd_notify, reload, single instance."""

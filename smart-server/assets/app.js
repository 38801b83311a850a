// dashboard placeholder

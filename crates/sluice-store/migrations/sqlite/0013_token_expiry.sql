-- A token may expire: past `expires_at` (µs since the epoch) it is refused.
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;

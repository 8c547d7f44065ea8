-- The recurrence window starts when the reboot is asked for, so a fault logged during boot counts.
ALTER TABLE workflows RENAME COLUMN rebooted_at_ms TO reboot_requested_at_ms;

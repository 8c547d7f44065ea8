-- One permit per risky step: the step's own (drain, reboot) beside the cordon permit.
ALTER TABLE workflows ADD COLUMN step_permit_id TEXT;

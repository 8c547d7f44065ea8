-- The fault's message (a kernel log line, a condition's message), for the evidence a workflow
-- records before it acts.
ALTER TABLE seen_faults ADD COLUMN message TEXT;

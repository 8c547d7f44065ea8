-- How a workflow's reinstall was asked for (a Cluster API Machine deleted, a Job created, the
-- webhook), persisted before it was: a restarted remediator waits on the same actuator.
ALTER TABLE workflows ADD COLUMN reinstall_via TEXT;

-- Who or what started a run ($accountability), kept so that a resumed run
-- sees it as the run did.
ALTER TABLE runs ADD COLUMN accountability TEXT;

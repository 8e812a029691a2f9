-- Client tokens (browsers, phones) evaluate only the flags marked for them
-- (README, "Client tokens"): a client sees whatever it evaluates, and a
-- flag's answer can tell what a team has not announced yet.
ALTER TABLE feature_flags ADD COLUMN client_visible boolean NOT NULL DEFAULT false;

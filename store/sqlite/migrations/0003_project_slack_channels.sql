-- The Slack channels a project's runs may post to (JSON array of channel
-- ids), set by the operator. Empty: the project may post nowhere.
ALTER TABLE projects ADD COLUMN slack_channels TEXT NOT NULL DEFAULT '[]';

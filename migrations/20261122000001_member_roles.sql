-- Roles on channel records: the creator is its owner; owners grant admin; owners and admins
-- manage members. Existing creators become owners, everyone else a plain member.
ALTER TABLE members
    ADD COLUMN role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member'));

UPDATE members m SET role = 'owner'
FROM channels c
WHERE c.name = m.channel AND c.created_by = m.user_id;

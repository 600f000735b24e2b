"""The roles a Raft replica can be in (a pre-candidate has not yet changed its term)."""

FOLLOWER = "follower"
PRECANDIDATE = "pre-candidate"
CANDIDATE = "candidate"
LEADER = "leader"

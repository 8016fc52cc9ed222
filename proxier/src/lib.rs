//! Applies what `rulegen` renders to the node kernel (iptables-restore, later IPVS and conntrack).

package node_test

func runChild() bool { return false }

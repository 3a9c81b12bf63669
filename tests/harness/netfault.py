"""iptables-legacy DROP rules on this machine's loopback, for ports a test
started itself: put in place at once, taken out by heal() (safe to call
twice: tests heal in the test and again in a cleanup)."""
import os
import shutil
import subprocess

IPTABLES = shutil.which("iptables-legacy") or "/usr/sbin/iptables-legacy"


class Rules:
    def __init__(self, rules):
        self.rules = rules
        for r in rules:
            subprocess.run([IPTABLES, "-I"] + r, check=True)
        self.on = True

    def heal(self):
        if self.on:
            for r in self.rules:
                subprocess.run([IPTABLES, "-D"] + r, check=False)
        self.on = False


def partition(port):
    """Packets to and from a loopback port dropped, both ways."""
    return Rules([["INPUT", "-i", "lo", "-p", "tcp", d, str(port), "-j", "DROP"]
                  for d in ("--dport", "--sport")])


def loss(port, probability):
    """A share of the packets to and from a loopback port dropped at random."""
    return Rules([["INPUT", "-i", "lo", "-p", "tcp", d, str(port), "-m", "statistic",
                   "--mode", "random", "--probability", str(probability), "-j", "DROP"]
                  for d in ("--dport", "--sport")])


def cut(port, user="0"):
    """Packets one user's processes send to a loopback port dropped (uid 0:
    pgrouter, run as root; postgres: the Patroni members, PostgreSQL, etcd)."""
    return Rules([["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port), "-m", "owner",
                   "--uid-owner", user, "-j", "DROP"]])


def available(owner=False):
    """Root, iptables-legacy, and (owner) its owner match."""
    if os.geteuid() != 0 or not os.path.exists(IPTABLES):
        return False
    if not owner:
        return subprocess.run([IPTABLES, "-L", "INPUT", "-n"],
                              capture_output=True).returncode == 0
    probe = ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", "1", "-m", "owner",
             "--uid-owner", "0", "-j", "DROP"]
    if subprocess.run([IPTABLES, "-A"] + probe, capture_output=True).returncode:
        return False
    subprocess.run([IPTABLES, "-D"] + probe, capture_output=True)
    return True

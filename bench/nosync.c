/* Measurement only (bench/run.sh with BENCH_NOSYNC=1): fsync and fdatasync
 * that return at once, preloaded into the daemon to show how much of the
 * figure the durable commit costs. A daemon running with this acknowledges
 * payments that a power cut would lose; never use it for anything else. */
int fsync(int fd);
int fdatasync(int fd);

int fsync(int fd)
{
  (void)fd;
  return 0;
}

int fdatasync(int fd)
{
  (void)fd;
  return 0;
}

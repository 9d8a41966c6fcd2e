/* What mapping prefetched pages ahead costs the kernel, per page (issue 22): 131072
 * pages installed into a userfaultfd range with UFFDIO_COPY (write-protect mode) in runs
 * of RUN pages, while the pages 8192 behind are dropped with MADV_DONTNEED in the same
 * runs: the steady state of a scan through a 32 MiB cache. Usage: uffd_copy_runs RUN */
#define _GNU_SOURCE
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int run=atoi(argv[1]); 
  size_t N=131072, W=8192, P=4096;
  int uffd=syscall(SYS_userfaultfd,O_CLOEXEC|O_NONBLOCK);
  struct uffdio_api api={.api=UFFD_API,.features=UFFD_FEATURE_PAGEFAULT_FLAG_WP};
  if(ioctl(uffd,UFFDIO_API,&api)){perror("api");return 1;}
  char*r=mmap(0,N*P,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0);
  struct uffdio_register reg={.range={(long)r,N*P},.mode=UFFDIO_REGISTER_MODE_MISSING|UFFDIO_REGISTER_MODE_WP};
  if(ioctl(uffd,UFFDIO_REGISTER,&reg)){perror("reg");return 1;}
  char*src=mmap(0,run*P,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE,-1,0);
  memset(src,1,run*P);
  double t0=now(); double tc=0, td=0;
  for(size_t i=0;i<N;i+=run){
    double a=now();
    {
    struct uffdio_copy c={.dst=(long)(r+i*P),.src=(long)src,.len=run*P,.mode=UFFDIO_COPY_MODE_WP};
    if(ioctl(uffd,UFFDIO_COPY,&c)){perror("copy");return 1;}
    }
    double b=now(); tc+=b-a;
    if(i>=W){ madvise(r+(i-W)*P,run*P,MADV_DONTNEED);} td+=now()-b;
  }
  printf("run=%d: %.2f us/page total, install %.2f, dontneed %.2f\n",run,(now()-t0)*1e6/N,tc*1e6/N,td*1e6/N);
}

// Runs in: tests. Stands in for spicebox-renderer and plays a compromised child: it answers the
// broker's hello properly, then does what SPICEBOX_TEST_MISBEHAVE says, then waits to be killed.
//   second-hello   another hello after the first
//   unsent-pong    a heartbeat answer for a ping the broker never sent
//   garbage        bytes that are not a Cap'n Proto message
//   descriptor     a pong carrying a descriptor no message of this boundary takes
#include <capnp/serialize.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "ipc/child-fds.h"
#include "ipc/render.capnp.h"

namespace {

using namespace spicebox::ipc;

void sendMessage(capnp::MessageBuilder& message, int fd = -1) {
  auto words = capnp::messageToFlatArray(message);
  iovec iov{words.asBytes().begin(), words.asBytes().size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  }
  if (::sendmsg(CHILD_CHANNEL_FD, &msg, MSG_NOSIGNAL) < 0)
    ::_exit(3);
}

void sendHello() {
  capnp::MallocMessageBuilder message;
  auto hello = message.initRoot<render::RendererToBroker>().initHello();
  hello.setProtocolVersion(render::PROTOCOL_VERSION);
  hello.setPid(::getpid());
  hello.setSandboxLevel(SandboxLevel::OFF);
  sendMessage(message);
}

void sendPong(uint64_t seq, int fd = -1) {
  capnp::MallocMessageBuilder message;
  message.initRoot<render::RendererToBroker>().initPong().setSeq(seq);
  sendMessage(message, fd);
}

}  // namespace

int main() {
  const char* mode = std::getenv("SPICEBOX_TEST_MISBEHAVE");
  if (!mode)
    return 2;
  // The broker's end of the pair was made non-blocking, and so was ours; this child blocks.
  ::fcntl(CHILD_CHANNEL_FD, F_SETFL, ::fcntl(CHILD_CHANNEL_FD, F_GETFL) & ~O_NONBLOCK);
  char buf[4096];
  if (::recv(CHILD_CHANNEL_FD, buf, sizeof buf, 0) <= 0)
    return 3;  // the broker's hello
  sendHello();
  std::string m = mode;
  if (m == "second-hello") {
    sendHello();
  } else if (m == "unsent-pong") {
    sendPong(999);
  } else if (m == "garbage") {
    static const char GARBAGE[16] = "not capnp at al";
    if (::send(CHILD_CHANNEL_FD, GARBAGE, sizeof GARBAGE, MSG_NOSIGNAL) < 0)
      return 3;
  } else if (m == "descriptor") {
    // Waits for the first ping, so the pong is otherwise valid.
    if (::recv(CHILD_CHANNEL_FD, buf, sizeof buf, 0) <= 0)
      return 3;
    int pipeFds[2];
    if (::pipe(pipeFds) != 0)
      return 3;
    sendPong(1, pipeFds[0]);
  } else {
    return 2;
  }
  // Keeps reading (pings) until the broker kills us.
  while (::recv(CHILD_CHANNEL_FD, buf, sizeof buf, 0) > 0) {
  }
  return 0;
}

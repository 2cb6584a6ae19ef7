// "Contribute a GPU": the OS switcher shows one system's commands without reloading the page, so a node
// token shown once stays on screen. Without JavaScript its links (?os=...) reload the page instead.
const switcher = document.querySelector(".os-switcher");

function show(os) {
  for (const section of document.querySelectorAll(".os-setup")) section.hidden = section.dataset.os !== os;
  for (const link of switcher.querySelectorAll("a[data-os]")) {
    if (link.dataset.os === os) link.setAttribute("aria-current", "true");
    else link.removeAttribute("aria-current");
  }
}

if (switcher) {
  switcher.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-os]");
    if (!link) return;
    event.preventDefault();
    show(link.dataset.os);
    history.replaceState(null, "", `?os=${link.dataset.os}#run-a-node`);
  });
}

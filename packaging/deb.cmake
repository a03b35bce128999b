# The Debian package: `scripts/package` (or `cpack -G DEB` in a build
# directory) makes npme_<version>_<arch>.deb from what `cmake --install`
# puts under /usr, plus the maintainer scripts of packaging/deb/.
# The version is the project's (project() in CMakeLists.txt).

# Who answers for the package: set your team's address (-DNPME_DEB_MAINTAINER=...).
set(NPME_DEB_MAINTAINER "npme maintainers <maintainers@npme.dev>" CACHE STRING "Maintainer field of the Debian package")

# `cmake --install` and cpack take what is built (scripts/package builds
# npme first) instead of building everything, tests included.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY ON)
install(TARGETS npme RUNTIME DESTINATION bin)

# Man pages, gzipped without a timestamp (reproducible, as Debian wants).
file(GLOB NPME_MAN_PAGES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/man/*.1)
set(NPME_MAN_GZ "")
foreach(page ${NPME_MAN_PAGES})
  get_filename_component(name ${page} NAME)
  set(gz ${CMAKE_BINARY_DIR}/packaging/man/${name}.gz)
  add_custom_command(OUTPUT ${gz}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/packaging/man
    COMMAND gzip -9nc ${page} > ${gz}
    DEPENDS ${page} VERBATIM)
  list(APPEND NPME_MAN_GZ ${gz})
endforeach()
set(NPME_CHANGELOG_GZ ${CMAKE_BINARY_DIR}/packaging/changelog.gz)
configure_file(${CMAKE_SOURCE_DIR}/packaging/deb/changelog.in ${CMAKE_BINARY_DIR}/packaging/changelog @ONLY)
add_custom_command(OUTPUT ${NPME_CHANGELOG_GZ}
  COMMAND gzip -9nc ${CMAKE_BINARY_DIR}/packaging/changelog > ${NPME_CHANGELOG_GZ}
  DEPENDS ${CMAKE_BINARY_DIR}/packaging/changelog VERBATIM)
add_custom_target(npme_package_files ALL DEPENDS ${NPME_MAN_GZ} ${NPME_CHANGELOG_GZ})
install(FILES ${NPME_MAN_GZ} DESTINATION share/man/man1)
install(FILES ${CMAKE_SOURCE_DIR}/packaging/deb/copyright ${NPME_CHANGELOG_GZ} DESTINATION share/doc/npme)

# Completions where Debian's shells look for them.
install(FILES ${CMAKE_SOURCE_DIR}/completions/npme.bash DESTINATION share/bash-completion/completions RENAME npme)
install(FILES ${CMAKE_SOURCE_DIR}/completions/_npme DESTINATION share/zsh/vendor-completions)
install(FILES ${CMAKE_SOURCE_DIR}/completions/npme.fish DESTINATION share/fish/vendor_completions.d)

# The systemd unit: deploy/npme.service (one unit to maintain) with the
# package's paths, and without its by-hand install instructions.
file(READ ${CMAKE_SOURCE_DIR}/deploy/npme.service NPME_UNIT)
string(REGEX REPLACE "^#[^\n]*\n(#[^\n]*\n)*\n" "" NPME_UNIT "${NPME_UNIT}")
string(REPLACE "/usr/local/bin/npme" "/usr/bin/npme" NPME_UNIT "${NPME_UNIT}")
string(REPLACE "/usr/local/lib/npme" "/var/lib/npme" NPME_UNIT "${NPME_UNIT}")
file(WRITE ${CMAKE_BINARY_DIR}/packaging/npme.service
  "# npme's systemd unit, from the Debian package (settings: /etc/npme/settings.json,\n"
  "# data: /var/lib/npme). Local changes: systemctl edit npme.\n\n${NPME_UNIT}")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/deploy/npme.service)
install(FILES ${CMAKE_BINARY_DIR}/packaging/npme.service DESTINATION /lib/systemd/system)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME npme)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${NPME_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SECTION web)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "private npm registry with replicas, snapshots and failover")
# The synopsis is the summary above; this is the extended description.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "npme serves npm, pnpm and yarn from one binary: publishes and installs with
tokens, public packages through an uplink, live read replicas (synchronous
or not), manual or etcd-driven failover, verified snapshots and restore,
and `npme doctor` to check and repair an instance.
.
The package creates the npme system user, /var/lib/npme for the data and
/etc/npme/settings.json, and enables the npme service without starting it.")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser, init-system-helpers (>= 1.52), sensible-utils")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${CMAKE_SOURCE_DIR}/packaging/deb/postinst ${CMAKE_SOURCE_DIR}/packaging/deb/prerm
  ${CMAKE_SOURCE_DIR}/packaging/deb/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)

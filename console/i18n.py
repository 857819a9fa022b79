"""The console's words in Chinese and English. The Chinese are the product page's own
(创建复制, 名称, 描述, 目标区域, 确定 ...); a language is chosen by the user and remembered in
a cookie."""

from __future__ import annotations

LANG_COOKIE = "csbs_console_lang"
LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"

# key -> (Chinese, English)
CATALOG: dict[str, tuple[str, str]] = {
    "console": ("管理控制台", "Console"),
    "service": ("云服务器备份", "Cloud Server Backup"),
    "storage": ("存储", "Storage"),
    "login.title": ("登录管理控制台", "Log in to the console"),
    "login.token": ("API 令牌", "API token"),
    "login.submit": ("登录", "Log in"),
    "login.refused": ("令牌无效", "This token is not valid"),
    "logout": ("退出", "Log out"),
    "language": ("语言", "Language"),
    "region": ("区域", "Region"),
    "project": ("项目", "Project"),
    "main": ("主项目", "main"),
    "switch": ("切换", "Switch"),
    "tab.backups": ("备份", "Backups"),
    "tab.servers": ("云服务器", "Servers"),
    "tab.images": ("镜像", "Images"),
    "tab.jobs": ("复制任务", "Replication jobs"),
    "name": ("名称", "Name"),
    "id": ("ID", "ID"),
    "server": ("云服务器", "Server"),
    "status": ("状态", "Status"),
    "size": ("大小", "Size"),
    "created": ("创建时间", "Created"),
    "origin": ("来源", "Origin"),
    "operation": ("操作", "Operation"),
    "made_here": ("本区域生成", "Made here"),
    "replicated_from": ("复制自", "Replicated from"),
    "more": ("更多", "More"),
    "create_replication": ("创建复制", "Create Replication"),
    "create_image": ("创建镜像", "Create Image"),
    "create_server": ("创建云服务器", "Create Server"),
    "description": ("描述", "Description"),
    "target_region": ("目标区域", "Target Region"),
    "target_project": ("项目", "Project"),
    "ok": ("确定", "OK"),
    "cancel": ("取消", "Cancel"),
    "p1": (
        "只能由中文字符、英文字母、数字、下划线、中划线组成，且长度小于等于255个字符。",
        "Only Chinese characters, English letters, digits, underscores (_) and hyphens (-), "
        "at most 255 characters.",
    ),
    "p2": ("描述长度小于等于255个字符。", "At most 255 characters."),
    "p3": (
        "只有具备复制能力的区域才会在目标区域中展示。",
        "Only regions that can accept replication are listed.",
    ),
    "no_targets": ("没有具备复制能力的目标区域。", "No region accepts replication."),
    "unreachable": ("不可达", "unreachable"),
    "not_replicable": (
        "从其他区域复制而来的备份仅可用于创建镜像。",
        "A backup replicated in from another region can only be used to create images.",
    ),
    "filter.name": ("按名称搜索", "Search by name"),
    "filter.all": ("全部状态", "All statuses"),
    "filter.apply": ("搜索", "Search"),
    "empty": ("暂无数据", "No items"),
    "prev": ("上一页", "Previous"),
    "next": ("下一页", "Next"),
    "page": ("页", "page"),
    "disks": ("磁盘", "Disks"),
    "disk": ("磁盘", "Disk"),
    "system_disk": ("系统盘", "System disk"),
    "data_disk": ("数据盘", "Data disk"),
    "sha256": ("计算 SHA-256", "Compute SHA-256"),
    "replications": ("复制记录", "Replication records"),
    "job": ("复制任务", "Replication job"),
    "progress": ("进度", "Progress"),
    "failure_reason": ("失败原因", "Failure reason"),
    "source": ("源", "Source"),
    "target": ("目标", "Target"),
    "replica": ("目标备份", "Replica"),
    "way": ("复制方式", "Way"),
    "image": ("镜像", "Image"),
    "backup": ("备份", "Backup"),
    "view_in_target": ("切换到目标区域查看", "See it in the target region"),
    "not_found": ("资源不存在", "Not found"),
    "csrf": ("请求已被拒绝：表单已过期，请刷新页面。", "Refused: the form has expired, reload."),
    # policies (the page's other two ways: M2, M3)
    "tab.policies": ("备份策略", "Policies"),
    "policy": ("备份策略", "Backup policy"),
    "create_policy": ("创建备份策略", "Create Backup Policy"),
    "edit": ("修改", "Edit"),
    "save": ("确定", "OK"),
    "servers": ("云服务器", "Servers"),
    "backup_schedule": ("备份执行时间（重复规则）", "Backup schedule (recurrence rule)"),
    "timezone": ("时区", "Time zone"),
    "retention": ("保留规则", "Retention"),
    "retention.count": ("按数量保留", "Keep the newest N"),
    "retention.days": ("按时间保留（天）", "Keep for N days"),
    "retention.forever": ("永久保留", "Keep forever"),
    "enabled": ("启用", "Enabled"),
    "replication_rule": ("复制策略", "Replication rule"),
    "replication_schedule": ("复制执行时间（重复规则）", "Replication schedule (recurrence rule)"),
    "replica_keep_count": ("目标备份保留数量（0：全部保留）", "Replicas to keep (0: all)"),
    "backup_now": ("立即备份", "Back up now"),
    "replicate_now": ("立即执行复制策略", "Replicate now"),
    "runs": ("执行记录", "Runs"),
    "next_backup": ("下次备份", "Next backup"),
    "next_replication": ("下次复制", "Next replication"),
    "yes": ("是", "yes"),
    "no": ("否", "no"),
    "kind.backup": ("备份", "backup"),
    "kind.replication": ("复制", "replication"),
    "trigger.schedule": ("按计划", "scheduled"),
    "trigger.execute_now": ("立即执行", "executed now"),
    "status.running": ("执行中", "running"),
    "status.finished": ("已完成", "finished"),
    "status.skipped": ("已跳过", "skipped"),
    "items": ("明细", "Items"),
    "kind": ("类型", "Kind"),
    "action.backed_up": ("已备份", "backed up"),
    "action.replicated": ("已复制", "replicated"),
    "action.skipped": ("已跳过", "skipped"),
    "action.failed": ("失败", "failed"),
    "action.deleted": ("已删除", "deleted"),
    "action.kept": ("已保留", "kept"),
    # statuses (backup, replication job, server, replication record)
    "status.creating": ("创建中", "creating"),
    "status.available": ("可用", "available"),
    "status.error": ("错误", "error"),
    "status.replicating": ("复制中", "replicating"),
    "status.restoring": ("恢复中", "restoring"),
    "status.waiting": ("等待中", "waiting"),
    "status.success": ("成功", "success"),
    "status.failed": ("失败", "failed"),
    "status.active": ("运行中", "active"),
    "status.deleting": ("删除中", "deleting"),
    "way.manual": ("手动复制", "manual"),
    "way.policy": ("策略复制", "policy"),
    "way.policy_execute": ("立即执行复制策略", "policy executed now"),
}


def language_of(value: str | None) -> str:
    return value if value in LANGUAGES else DEFAULT_LANGUAGE


def translate(lang: str, key: str) -> str:
    words = CATALOG.get(key)
    if words is None:
        return key
    return words[0] if lang == "zh" else words[1]
